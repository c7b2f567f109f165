"""Real data in main: a base backup of a source server, then main follows it as a hot standby."""
