"""`make demo`: the whole network on one machine, on embedded defaults (ADR 0030).

processes  the children the demo starts (by pid, logs in the output folder), stopped on exit
steps      named steps with their outcome; the first failure names the step
network    the folder layout, keys and config files of every role
observe    one snapshot of the network: coordinator database, device status files, ledger
live       the live table (redrawn on a terminal, plain lines otherwise)
report     the final figures, the uptime plot and the frozen HTML report
rollout    the two-stage rollout (operator publishes stage 0; the controller, or a publish, stage 1)
run        the sequence of steps
device_only  the earlier one-device demo (`edgeproof demo --device-only`)
"""
