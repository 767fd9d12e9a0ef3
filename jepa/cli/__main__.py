from jepa.cli import main

main()
