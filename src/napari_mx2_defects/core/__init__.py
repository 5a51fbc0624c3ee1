"""Shared building blocks without heavy dependencies: parameter validation (:mod:`.validation`)."""
