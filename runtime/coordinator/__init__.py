"""The coordinator: the ``Runtime`` front object over the deployment of actors, the
routing of batches and the checkpoints that commit them."""
