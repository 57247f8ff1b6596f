from lit_distill.cli import main

main()
