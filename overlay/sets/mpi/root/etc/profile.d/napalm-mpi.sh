# napalm mpi set: `mpirun -np 8 ./app` uses every clone without a --hostfile.
export NAPALM_MPI_HOSTFILE=/etc/openmpi/openmpi-default-hostfile
export OMPI_MCA_orte_default_hostfile="$NAPALM_MPI_HOSTFILE"
export PRTE_MCA_prte_default_hostfile="$NAPALM_MPI_HOSTFILE"
