"""Infrastructure shared by the worker, the API and the reactors: settings, database, composition root."""
