"""The nova-scheduler filter that lets only trusted images onto worker-node flavours."""
