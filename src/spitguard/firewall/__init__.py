"""Kernel-side enforcement: bans pushed into nftables so floods never reach Python."""

from .nft import NftBans, NftResult, Runner, parse_address, run_subprocess

__all__ = ["NftBans", "NftResult", "Runner", "parse_address", "run_subprocess"]
