"""Advantage estimators, policy losses and named algorithms."""
