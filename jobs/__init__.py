"""Driver-side code: jobs, configuration, SparkSession factory, model resolution and table I/O."""
