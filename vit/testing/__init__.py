"""Support for tests and benchmarks only (peers to compare against); the library never imports
it."""
