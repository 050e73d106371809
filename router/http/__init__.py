"""The HTTP edge: fedrouter's own HTTP/1.1 server, its flow control, load shedding and workers."""
