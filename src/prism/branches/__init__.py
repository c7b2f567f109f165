"""The branches: the manager split by job, and what it does to a branch.

Status and registry, admission decisions, servers, sessions, recovery, data (clone,
snapshots, point in time, WAL archive), team policies, hooks, the reaper. May import
source, storage, runtime, durable, postgres and core; never the front door, api or cli.
"""
