"""What the daemon shows about itself: the figures' sources, the health rule, and Home
Assistant discovery. Read from counters and reader connections, never from the writer."""
