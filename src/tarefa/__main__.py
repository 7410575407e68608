from tarefa.cli import main

main()
