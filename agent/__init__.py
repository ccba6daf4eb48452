"""edgeproof: an edge-AI DePIN device agent.

Runs quantized models locally, reports signed proofs of work and uptime over
MQTT and claims Solana token rewards. Raw data never leaves the device.
"""

__version__ = "0.1.0"
