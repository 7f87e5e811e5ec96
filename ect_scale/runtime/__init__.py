"""Plumbing every other wing may use: the process group (`dist`), entry points (`entry`), expected errors
(`errors`), failed-peer detection (`peers`), child processes (`procs`) and file modes (`filemode`).
Nothing here imports another wing: every other wing may import this one."""
