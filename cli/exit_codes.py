"""The command line's exit codes, the same for every command."""

EXIT_OK = 0
EXIT_FAILED = 1          # the command ran but found a problem (e.g. `models verify`: a bad file)
EXIT_BAD_INPUT = 2       # a DrSegError (bad input, missing weights): one line on stderr
EXIT_CANCELLED = 130     # Ctrl+C or a cancelled run (128 + SIGINT, as shells report it)
