"""The panels, one module each, and the widgets they are made of."""
