"""What the app's pages call: the explorer facade, catalog check, contributions, retrieval (ann), maps, roots."""
