"""Solana: the RPC client wrapper, pure SPL instruction builders and the local ledger.

``client`` talks to any cluster by URL (localnet, devnet, mainnet: the same code);
``spl`` builds instructions as pure functions; ``ledger``, ``rpc_methods`` and
``rpc_server`` are the local ledger (LiteSVM behind JSON-RPC) that tests and demos use;
``bootstrap`` creates or adopts the reward mint and the coordinator's vault.
"""
