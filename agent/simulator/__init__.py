"""A fleet simulator that speaks the real protocol over real MQTT (``edgeproof simulate fleet``).

N simulated devices with deterministic keys, each with its own signed hash chain, send
heartbeats quoting the coordinator's verified beacon, work proofs under the firmware
profile's bound, and answer challenges on a script (honestly with the real model, naming
the wrong model, or not at all), in compressed time.  What each device did is written as
ground truth, to be compared with the coordinator's uptime audit.

The simulator is a device-side role: it never imports :mod:`agent.coordinator` nor
:mod:`agent.device` (``tests/unit/test_architecture.py``).  Modules:

* :mod:`~agent.simulator.script` -- the script (TOML or JSON) and the built-in default;
* :mod:`~agent.simulator.identities` -- device and owner keys from a seed, signed bindings;
* :mod:`~agent.simulator.plan` -- what a device does in a slot (pure);
* :mod:`~agent.simulator.truth` -- the ground truth, per device per epoch;
* :mod:`~agent.simulator.compare` -- ground truth against an audit report (pure);
* :mod:`~agent.simulator.links` -- devices multiplexed over a few MQTT v5 connections;
* :mod:`~agent.simulator.inbox` -- beacons, challenges and verdicts as a device judges them;
* :mod:`~agent.simulator.answers` -- challenge answers off the timing thread;
* :mod:`~agent.simulator.fleet` -- the run: slots, heartbeats, proofs, the end of the run.
"""
