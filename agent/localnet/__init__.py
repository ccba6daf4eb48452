"""A local network on one machine for demos and tests: a Mosquitto broker on loopback, a demo clip."""
