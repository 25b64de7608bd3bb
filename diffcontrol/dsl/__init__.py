"""The modelling language: leaves, atoms, constraints and problems."""
