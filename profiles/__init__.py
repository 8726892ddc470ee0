"""Built-in de-identification profiles (data; shipped in the wheel as ``lake.profiles``)."""
