"""The shipped experiment files, importable as ``pyramidrepro.experiments`` so an installed package finds them."""
