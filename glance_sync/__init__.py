"""The sync service (issue 3): fetching, transfer, reconciler and image stores."""
