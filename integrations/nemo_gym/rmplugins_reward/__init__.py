"""rmplugins as a NeMo-Gym resources server (see app.py)."""
