"""Test helpers: fixtures, fake and real services, model and media builders (not tests themselves)."""
