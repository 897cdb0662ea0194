"""Analysis of run directories: summary with confidence intervals, the survival matrix,
comparison of two runs, the regression gate and the report."""
