"""The coordinator service: ingest, registry, storage (issue 7, first slice).

Nothing here imports :mod:`agent.device` (a test checks it): the coordinator shares only
the role-neutral parts of the agent -- the protocol, validation, profiles, model cards and
the MQTT TLS helpers.
"""
