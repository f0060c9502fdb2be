"""Infrastructure of the lab: the four services in Docker or as local processes."""
