"""What the gateway knows of its backends: live statistics, energy and carbon, prices, provider wiring."""
