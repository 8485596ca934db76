"""The synthetic world, a test harness with a known answer: patients (findings, clinical data, outcomes),
the chest CT phantom they are rendered into, and the reports written about them."""
