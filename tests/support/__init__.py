"""What the tests share: helpers, fake NVML, a mocked AWS account, fixture /proc trees."""
