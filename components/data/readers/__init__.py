"""Readers for the seed datasets in their published formats (see ``base``)."""
