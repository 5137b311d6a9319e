"""Sources: each reads one kind of measurement from the machine and fills one field of the Sample
(collect.SOURCES lists them in the order they run)."""
