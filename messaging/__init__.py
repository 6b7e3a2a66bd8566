"""The seam between the database and RabbitMQ: transactional outbox, relay, topology, broker connections."""
