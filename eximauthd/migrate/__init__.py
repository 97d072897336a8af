"""``eximauthd migrate-passwords``: the password column, the run, its progress line."""
