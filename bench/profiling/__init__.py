"""Cost measurement: parameters, MACs, memory traffic and activations, latency, training steps."""
