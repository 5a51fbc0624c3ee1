"""Digital twins: parent monolayers, defects, messy conditions, HAADF simulation, ground truth."""
