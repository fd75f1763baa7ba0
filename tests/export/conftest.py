from export_fixtures import batch  # noqa: F401  (fixture)
