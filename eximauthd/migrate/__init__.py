"""``eximauthd migrate-passwords``: the password column, the rows and the hashing workers, the run
and its report, its progress line."""
