"""What Prism keeps on disk about itself: the state file, the one journal of
typed intents, and the one recovery pass at start-up.

May import core only.
"""
