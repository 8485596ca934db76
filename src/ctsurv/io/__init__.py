"""Real data in: CT volumes in any common format, cohort tables, clinical covariates, public-dataset adapters
(CT-RATE, INSPECT), and volume inspection."""
