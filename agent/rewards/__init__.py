"""Rewards: the epoch settlement (policy, allocation, Merkle commitment, settlement records).

The policy, the allocation and the Merkle tree are pure and role-neutral: anyone holding an
epoch's audit report (or a capture it is recomputed from) and the policy gets the same root.
"""
