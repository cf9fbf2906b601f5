"""How to start, watch and stop one model's server process."""
