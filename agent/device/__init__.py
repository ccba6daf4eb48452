"""The device daemon: work windows, heartbeats, challenges, health, thermal policy, systemd."""
