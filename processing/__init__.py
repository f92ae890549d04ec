"""DR-Seg's Processing provider (`drseg`) and its algorithms."""
