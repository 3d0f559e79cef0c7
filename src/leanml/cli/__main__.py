from leanml.cli import main

main()
