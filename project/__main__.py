"""`python -m project [fit|validate|test|predict] ...`; with no arguments, the CIFAR-10 demo."""

from project.cli import main

if __name__ == "__main__":
    main()
