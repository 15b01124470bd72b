"""Image stores: where the sync puts trusted images (a directory, Glance, EC2)."""
